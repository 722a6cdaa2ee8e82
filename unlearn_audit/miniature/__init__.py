"""The miniature worlds: small, reproducible MUSE-, TOFU- and WMDP-shaped Hub caches (data, an original, a retrained
model, unlearned checkpoints made by a constructed worst case and by real unlearning methods) that ``demo`` and the
tests audit offline."""
