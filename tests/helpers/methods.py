"""A tiny configuration of every shipped method, and the image grid the V&L methods read."""

SMALL = {
    "full": {},
    "adapters": {"reduction_factor": 8},
    "adapters-shared": {"reduction_factor": 8},
    "hyperformer": {"task_dim": 8, "projector_hidden": 16, "reduction_factor": 8},
    "hyperformer++": {"task_dim": 8, "projector_hidden": 16, "reduction_factor": 8},
    "prefix": {"prefix_length": 3, "hidden": 16},
    "mam": {"prefix_length": 3, "hidden": 16, "adapter_dim": 8},
    "prompt": {"prompt_length": 3},
    "hyperpelt": {"prefix_length": 3, "hyper_dim": 8, "task_dim": 16, "projector_hidden": 16,
                  "adapter_dim": 4},
    "vl-hyperpelt": {"prefix_length": 3, "hyper_dim": 8, "task_dim": 16, "projector_hidden": 16,
                     "adapter_dim": 4, "feature_dim": 8},
    "clip-t5": {"feature_dim": 8},
    "vl-adapter": {"reduction_factor": 8, "feature_dim": 8},
}
GRID = 3  # image features of the V&L methods: [batch, GRID, 8], the grid equal to their prefix_length
