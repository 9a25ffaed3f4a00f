"""The MLflow pyfunc definition of an atomray checkpoint ("models from code").

This file is handed to `mlflow.pyfunc.log_model(python_model=<this path>, artifacts=...)`;
MLflow stores the file itself, not a pickle, so loading a registered model never unpickles
an object. The artifacts are the checkpoint's `model.pt` (state dict, read with
`torch.load(weights_only=True)`), `config.yaml` and `state.json`. atomray itself never
imports this module; `atomray.tracking.load_model_uri` reads the artifacts directly.

Pyfunc input: a dict of arrays x0 (B,N,3) Å centred, v0 (B,N,3) Å/fs, z (B,N), lags_fs (B,P),
mask (B,N) and optionally rwpe (B,N,K). Output: predicted positions (B,P,N,3) Å.
"""

from __future__ import annotations

import mlflow.pyfunc
from mlflow.models import set_model


class AtomCheckpointModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from pathlib import Path

        from atomray.checkpoint import load_model

        directory = Path(context.artifacts["model"]).parent
        self.model, self.config = load_model(directory)

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        batch = {k: torch.as_tensor(np.asarray(v)) for k, v in dict(model_input).items()}
        with torch.no_grad():
            out = self.model(batch["x0"].float(), batch["v0"].float(), batch["z"].long(),
                             batch["lags_fs"].float(), batch["mask"].bool(),
                             batch["rwpe"].float() if "rwpe" in batch else None)
        return out.numpy()


set_model(AtomCheckpointModel())
