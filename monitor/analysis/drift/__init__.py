"""Input drift: production inputs against a reference.

==========  ==================================================================
sources     where inputs come from (JSONL folders, a SQL table), windows, references
evidently   the only module that imports Evidently: descriptors, classifiers, reports
==========  ==================================================================

Importing this package imports neither Evidently nor pandas.
"""
