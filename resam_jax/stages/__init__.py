"""The three stages of a ReSAM training step (docs/method.md section 4).

refine.py     entropy-confidence filtering of the teacher's point-prompted masks, overlap removal
requery.py    tight boxes of the refined masks, and the box-prompted pseudo-labels
reinforce.py  Soft Semantic Alignment: box-pooled instance features, FIFO queues, SSA loss
"""
