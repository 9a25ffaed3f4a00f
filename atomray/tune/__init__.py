"""Ray Tune over whole training runs: search spaces and ablation grids (`space`), the trial
runner with MLflow parent/child runs (`runner`), sweeps (`sweep`) and five-fold UMAP-cluster
cross-validation (`cv`). Importing this package does not import Ray."""
