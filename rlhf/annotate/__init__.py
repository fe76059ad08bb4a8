"""Preference collection: a small web app where annotators compare two responses per HHH dimension.

Modules: ``store`` (SQLite), ``assignment`` (who labels what), ``item_files`` and ``sampling`` (where
items come from), ``app`` + ``templates/`` (the web app), ``serving`` (uvicorn), ``agreement`` (kappa,
alpha), ``stats``, ``export`` (labels -> preference records) and ``cli`` (``rlhf annotate ...``).
"""
