"""Every kind of model set a generator report holds, in the order tables and plots show them.

generated (with select=k: the best n of k*n by training-split loss), generated-raw (the raw
samples beside a selected run), the zoo, fresh models of the zoo's recipe, the task baselines
(task_baselines.py; with a head-fitting generator also the retrieval ones given its head) and the Zeng et al. baselines (baselines.py). A module of its own so the
report and its plots share the list without importing each other.
"""
from generators.evaluation.baselines import KINDS as ZENG_KINDS
from generators.evaluation.task_baselines import HEAD_KINDS, TASK_KINDS

KINDS_ORDER = ("generated", "generated-raw", "zoo", "fresh") + TASK_KINDS + HEAD_KINDS + ZENG_KINDS
