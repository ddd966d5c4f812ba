"""Built-in feature types: ``categorical``, ``multi_categorical``, ``numeric``, ``vector`` (``tabular``),
``text``, ``image``, ``audio`` (``content``) and ``sequence`` (``sequence``). Every module but ``plugin``
imports with numpy alone."""
