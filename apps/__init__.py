"""The jobs built on the engine, one package each, with its own command line (``cascade <job>``):

- :mod:`apps.generate`: ``cascade generate`` (a video from a schedule; ``--interactive`` streams);
- :mod:`apps.serve`: ``cascade serve`` (a live stream to a browser);
- :mod:`apps.calibrate`: ``cascade calibrate`` and ``cascade validate`` (profiles, measured vs predicted);
- :mod:`apps.quality`: ``cascade quality`` (what cascade settings do to the toy model's videos);
- :mod:`apps.toy`: ``python -m apps.toy`` (training the toy model).

What they share sits here: :mod:`apps.cli` (the ``cascade`` command), :mod:`apps.request` (the request a
job's flags resolve to, once), :mod:`apps.flags` (the apps' flag vocabulary), :mod:`apps.sources` (a run's
model, text encoder and decoder), :mod:`apps.streams` (how a live stream's schedule changes),
:mod:`apps.interrupts`, :mod:`apps.host` and :mod:`apps.progress`.

Importing an app's ``cli`` module imports no torch: the ``cascade`` command registers every job cheaply.
"""
