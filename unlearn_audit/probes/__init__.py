"""The probes of each benchmark (MUSE, TOFU, WMDP and the loss screen) behind one registry, the per-item scores they
compute and the metric table every view reads."""
