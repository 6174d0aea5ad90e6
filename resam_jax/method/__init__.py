"""The ReSAM method on any backbone of resam_jax.models (docs/method.md section 4).

refine.py, requery.py, reinforce.py   the three stages
pseudo_labels.py    the teacher's Refine + Requery pass (training, evaluation, diagnosis)
instances.py        instance chunks and micro-batches
losses.py, metrics.py, optim.py, train_state.py, train_step.py, eval_step.py
"""
