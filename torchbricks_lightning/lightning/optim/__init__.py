"""Optimisation of a brick collection: parameter groups by brick path (:mod:`.param_groups`), the optimizer and
scheduler (:mod:`.optimizers`) and the unfreeze schedule (:mod:`.finetuning`)."""
