"""Data-parallel batch norm on torch.distributed (gloo, CPU): a batch split over ranks (per-rank
batch norm as DDP computes it, SyncBatchNorm's pooled statistics) and population statistics of
many files, in real processes, locally (--ranks K, loopback only) or under torchrun."""
