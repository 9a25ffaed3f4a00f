"""Training: the objective and metrics (pure PyTorch), optimisers, the Ray Train worker loop,
checkpoints. Importing this package imports nothing heavy; import the submodules you need
(`atomray.train.loss`, `atomray.metrics`, ...). Only the worker loop calls `ray.train`.
"""
