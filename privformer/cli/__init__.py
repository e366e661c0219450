"""The ``privformer`` command line."""
