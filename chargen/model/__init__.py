"""The recurrent language model, the one-token stepper every sampler uses, and the choice of
device and precision."""
