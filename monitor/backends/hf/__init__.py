"""The in-process backend: transformers and peft, the only modules that import them.

=========  ================================================================
backend    :class:`HFBackend`: loading, log-likelihoods, generation
packing    packed token trees and their 4D block masks
imports    heavy imports with the garbage collector paused, then frozen
=========  ================================================================

Importing this package does not import torch; loading a model does.
"""
