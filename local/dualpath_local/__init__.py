"""The local DualPath stack: controller + agents on loopback, engine stand-ins, the demo."""
