"""What the module logs: step losses, epoch means of the losses (:mod:`.losses`), summarised metrics and pictures
(:mod:`.metrics`), the keys known before training (:mod:`.keys`) and the warnings a user cannot act on."""
