"""Protocol design for a site's own scanner (issue 12, parts 4 and 5).

A top-level package like :mod:`phantomdce.engine`: it may use the truth side, the
estimation side, the engine and the report; nothing on the truth side imports it.

- :mod:`phantomdce.design.site`: a site's protocol, scanner, tissues, fitter and pipeline
  (``SITE.toml``).
- :mod:`phantomdce.design.assess`: ``phantomdce assess SITE.toml``, the one-page report of
  where a site's protocol stands.
"""
