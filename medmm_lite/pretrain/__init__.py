"""Pretraining recipes, one module per objective (``clip``, ``gloria``, ``mae``, ...).

Each module holds the model that objective trains, its loss step, and a cached
``pretrain(...)`` that lessons call after building the same pieces inline. Import
the one you need: ``from medmm_lite.pretrain import clip``.
"""
