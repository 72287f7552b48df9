"""Training the toy model (``python -m apps.toy``): exact few-step targets from the toy world
(:mod:`apps.toy.targets`), the training loop (:mod:`apps.toy.train`) and its command (:mod:`apps.toy.cli`).
The weights it writes ship in :mod:`models.weights`."""
