/* The pod sandbox ("pause") image of the local test cluster: holds the pod's namespaces,
 * sleeps until asked to stop, and reaps zombies (it is PID 1 of the pod when the pod shares
 * its PID namespace). Built with `gcc -static` by hack/image-build.sh; no registry here
 * ships registry.k8s.io/pause. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  signal(SIGINT, stop);
  signal(SIGTERM, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
  return 0;
}
