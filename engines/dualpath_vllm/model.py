"""A tiny random-weight Llama checkpoint with a word-level tokenizer, made locally.

Nothing can be fetched from a model hub here, so the engines serve this model. Its weights
are drawn with a large initializer range on purpose: with the usual 0.02 the output
distribution is nearly uniform, and a wrong KV cache would leave the answers unchanged
(../shared/notes/vllm-cpu.md). With 0.3 one changed prompt token moves the greedy tokens
and the logprobs, so a token-equality check against a reference engine can fail.

Building needs torch, transformers and tokenizers (the engines' venv): `ensure_model` runs
there, `ensure_model_subprocess` calls it from any Python.

    python -m dualpath_vllm.model DIR     # prints DIR once it holds a complete model
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Bump when anything below changes what is written: a directory made by an older recipe
# is then rebuilt instead of reused.
RECIPE_VERSION = 1
MARKER = "dualpath-model.json"

VOCAB_SIZE = 1024
MAX_POSITION_EMBEDDINGS = 4096  # also the longest prompt + output an engine accepts
SEED = 0
LLAMA_CONFIG: dict[str, object] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
    "initializer_range": 0.3,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 3,
}

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>")
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, *ROLE_TOKENS)

# Roles are single special tokens, so a chat turn costs 2 tokens of framing.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|> {{ message['content'] }} <|end|> "
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

WORD_LIST = """
hello hi thanks yes no the of and to a in is it you that he was for on are with as i his they be
at one have this from or had by hot word but what some we can out other were all there when up
use your how
said an each she which do their time if will way about many then them write would like so
these her long make thing see him two has look more day could go come did number sound no
most people my over know water than call first who may down side been now find any new work
part take get place made live where after back little only round man year came show every
good me give our under name very through just form sentence great think say help low line
differ turn cause much mean before move right boy old too same tell does set three want air
well also play small end put home read hand port large spell add even land here must big
high such follow act why ask men change went light kind off need house picture try us again
animal point mother world near build self earth father head stand own page should country
found answer school grow study still learn plant cover food sun four between state keep eye
never last let thought city tree cross farm hard start might story saw far sea draw left late
run while press close night real life few north open seem together next white children begin
got walk example ease paper group always music those both mark often letter until mile river
car feet care second book carry took science eat room friend began idea fish mountain stop
once base hear horse cut sure watch color face wood main enough plain girl usual young ready
above ever red list though feel talk bird soon body dog family direct pose leave song measure
door product black short numeral class wind question happen complete ship area half rock order
fire south problem piece told knew pass since top whole king space heard best hour better true
during hundred five remember step early hold west ground interest reach fast verb sing listen
six table travel less morning ten simple several vowel toward war lay against pattern slow
center love person money serve appear road map rain rule govern pull cold notice voice unit
power town fine certain fly fall lead cry dark machine note wait plan figure star box noun
field rest correct able pound done beauty drive stood contain front teach week final gave green
oh quick develop ocean warm free minute strong special mind behind clear tail produce fact
street inch multiply nothing course stay wheel full force blue object decide surface deep moon
island foot system busy test record boat common gold possible plane stead dry wonder laugh
thousand ago ran check game shape equate miss brought heat snow tire bring yes distant fill
east paint language among grand ball yet wave drop heart am present heavy dance engine position
arm wide sail material size vary settle speak weight general ice matter circle pair include
divide syllable felt perhaps pick sudden count square reason length represent art subject
region energy hunt probable bed brother egg ride cell believe fraction forest sit race window
store summer train sleep prove lone exercise wall catch mount wish sky board joy winter sat
written wild instrument kept glass grass cow job edge sign visit past soft fun bright gas
weather month million bear finish happy hope flower clothe strange gone jump baby eight village
meet root buy raise solve metal whether push seven paragraph third shall held hair describe
cook floor either result burn hill safe cat century consider type law bit coast copy phrase
silent tall sand soil roll temperature finger industry value fight lie beat excite natural view
sense ear else quite broke case middle kill son lake moment scale loud spring observe child
straight consonant nation dictionary milk speed method organ pay age section dress cloud
surprise quiet stone tiny climb cool design poor lot experiment bottom key iron single stick
flat twenty skin smile crease hole trade melody trip office receive row mouth exact symbol die
least trouble shout except wrote seed tone join suggest clean break lady yard rise bad blow oil
blood touch grew cent mix team wire cost lost brown wear garden equal sent choose fell fit flow
fair bank collect save control decimal gentle woman captain practice separate difficult doctor
please protect noon whose locate ring character insect caught period indicate radio spoke atom
human history effect electric expect crop modern element hit student corner party supply bone
rail imagine provide agree thus capital chair danger fruit rich thick soldier process operate
guess necessary sharp wing create neighbor wash bat rather crowd corn compare poem string bell
depend meat rub tube famous dollar stream fear sight thin triangle planet hurry chief colony
clock mine tie enter major fresh search send yellow gun allow print dead spot desert suit
current lift rose continue block chart hat sell success company subtract event particular deal
swim term opposite wife shoe shoulder spread arrange camp invent cotton born determine quart
nine truck noise level chance gather shop stretch throw shine property column molecule select
wrong gray repeat require broad prepare salt nose plural anger claim continent oxygen sugar
death pretty skill women season solution magnet silver thank branch match suffix especially fig
afraid huge sister steel discuss forward similar guide experience score apple bought led pitch
coat mass card band rope slip win dream evening condition feed tool total basic smell valley
nor double seat arrive master track parent shore division sheet substance favor connect post
spend chord fat glad original share station dad bread charge proper bar offer segment slave
duck instant market degree populate chick dear enemy reply drink occur support speech nature
range steam motion path liquid log meant quotient teeth shell neck
"""
COMMON_WORDS = WORD_LIST.split()
PUNCTUATION = list(".,;:!?'\"()-")
DIGITS = [str(d) for d in range(10)]


def vocabulary() -> list[str]:
    """VOCAB_SIZE distinct tokens, the same on every call: special tokens, punctuation,
    digits, then common English words (so chat prompts read as words, not <unk>)."""
    words: list[str] = [*SPECIAL_TOKENS, *PUNCTUATION, *DIGITS]
    seen = set(words)
    for word in COMMON_WORDS:
        if word not in seen:
            seen.add(word)
            words.append(word)
    if len(words) < VOCAB_SIZE:
        raise AssertionError(f"the word list gives {len(words)} tokens, {VOCAB_SIZE} needed")
    return words[:VOCAB_SIZE]


def is_complete(model_dir: Path) -> bool:
    try:
        marker = json.loads((model_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(marker.get("recipe_version") == RECIPE_VERSION)


def ensure_model(model_dir: Path | str) -> Path:
    """Build the model into `model_dir` unless a complete one is there; returns the path.

    Written into a temporary sibling directory and renamed into place, so a reader never
    sees half a model and concurrent callers agree on one result."""
    target = Path(model_dir).resolve()
    if is_complete(target):
        return target
    if target.exists() and any(target.iterdir()) and not (target / MARKER).exists():
        raise FileExistsError(f"{target} holds something other than a dualpath model")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
    try:
        _write_model(staging)
        if is_complete(target):  # a concurrent builder finished first
            return target
        if target.exists():  # from an older recipe (or empty): replaced
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
            os.rename(target, stale / "model")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            if not is_complete(target):  # not a concurrent builder that won the rename
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_model(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(**LLAMA_CONFIG, dtype="bfloat16")  # type: ignore[arg-type]
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    _write_tokenizer(out)
    marker = {"recipe_version": RECIPE_VERSION, "seed": SEED, "config": LLAMA_CONFIG}
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _write_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    # Text prompts start with BOS, as Llama's do; chat prompts get it from the template.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITION_EMBEDDINGS,
    )
    wrapped.save_pretrained(out)


def ensure_model_subprocess(
    model_dir: Path | str, python: Path | str | None = None, timeout_s: float = 300.0
) -> Path:
    """`ensure_model` run by `python` (default: the engines' venv), for callers without torch."""
    from dualpath_vllm.process import engines_python

    argv = [str(python or engines_python()), "-m", "dualpath_vllm.model", str(model_dir)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def default_model_dir() -> Path:
    """Where the demo and the tests keep the tiny model (made once per machine)."""
    cache = Path(os.environ.get("DUALPATH_CACHE", Path.home() / ".cache" / "dualpath"))
    return cache / "models" / f"tiny-llama-r{RECIPE_VERSION}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dualpath_vllm.model DIR", file=sys.stderr)
        return 2
    print(ensure_model(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
