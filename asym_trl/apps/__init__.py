"""Applications of the library, not its API: the offline quickstart (``python -m asym_trl.apps.quickstart``, ``make
quickstart``) and the tiny offline stand-ins it and the tests run on (``asym_trl.apps.tiny``)."""
