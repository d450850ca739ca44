"""What a checkpoint carries beyond weights: the resume state of an interrupted epoch (:mod:`.resume`) and the
example inputs for export (:mod:`.example_inputs`)."""
