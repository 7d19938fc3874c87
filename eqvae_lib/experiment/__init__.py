"""The experiment layer of the EQ-VAE kit: what the notebooks and ``make reproduce`` need around the method library.

* :mod:`.config` — typed stage configs (one frozen dataclass per stage), profiles validated against them.
* :mod:`.pipeline` — ``train_or_load_...`` artefacts for the notebooks, cached by config, inputs and code version.
* :mod:`.records`, :mod:`.plotting` — result records with provenance, the report, one figure style.
* :mod:`.claims`, :mod:`.verdicts`, :mod:`.paper_values` — every claim of the paper as data, the verdict rules, the
  paper's numbers.
* :mod:`.projection` — this machine's throughput and the projected wall time of each notebook (``make project``).
* :mod:`.plateau_pilot` — the base-only design pilot: where the base's validation plateau rule fires.

Modules here may import the method library (``eqvae_lib.*``); no library module imports this subpackage
(``tests/test_import_graph.py`` checks it). Nothing is imported here, so ``import eqvae_lib.experiment.verdicts``
stays light.
"""
