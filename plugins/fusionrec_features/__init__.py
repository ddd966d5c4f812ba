"""Built-in feature types: ``categorical``, ``multi_categorical``, ``numeric``, ``vector`` (``tabular``) and
``text``, ``image``, ``audio`` (``content``). Every module but ``plugin`` imports with numpy alone."""
