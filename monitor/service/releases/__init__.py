"""Base-model releases: the families' versions, the watchers that find new ones, what a release triggers.

============  ================================================================
sources       where releases appear (folder, OpenAI-compatible model list, hub)
effective     releases folded into the configuration; challenger job names
challengers   pending and stale challenger jobs; marking a release evaluated
watch         :class:`ReleaseWatcher`: scans when due, stores, raises the event
============  ================================================================

A fine-tune ages when its base model is superseded.  Each ``families:`` entry of
the configuration lists a base model's versions, oldest first, and may *watch*
a source where new versions appear:

* ``directory``: a folder where new model folders appear (a release is a
  sub-folder with a ``config.json`` and weights, untouched for ``settle``);
* ``openai``: an OpenAI-compatible server whose ``/models`` list grows;
* ``hub``: a hub repository whose branch gets new commits.

Every release is stored once (table ``releases``) and becomes a model the
monitor can evaluate, named after it.  For each fine-tune of the family it is a
*challenger*, and the daemon queues, without anyone asking, the challenger
job ``challengers-<release>``: the release and the fine-tune's old base, on the
fine-tune's golden eval sets, under each of its prompt strategies, so that like
is compared with like.  When that job has run, the recommendations are redone
and the release is marked evaluated; a release not yet evaluated is queued
again at the next start.

:func:`effective_config` folds the stored releases into the configuration; the
daemon and the CLI work on that effective configuration, so a discovered
release behaves like a configured model everywhere (runs, resume, metrics).
"""
