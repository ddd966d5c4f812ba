"""Hook specifications: the whole plugin API of fusionrec.

A plugin is a module (or object) with functions marked ``@fusionrec.hookimpl`` whose names match
the specs below, registered under the ``fusionrec`` entry-point group::

    [project.entry-points.fusionrec]
    my_plugin = "my_package.plugin"

Every registration hook returns ``{name: factory}``. Names are what configs use
(``trunk: {name: mmoe}``) and what checkpoints store; a factory is a class deriving from the base
class of its slot in :mod:`fusionrec.components`. Two plugins registering the same name in the same
slot is an error naming both.
"""

import pluggy

hookspec = pluggy.HookspecMarker("fusionrec")
hookimpl = pluggy.HookimplMarker("fusionrec")


# --------------------------------------------------------------------------------------------
# Feature types
# --------------------------------------------------------------------------------------------


@hookspec
def fusionrec_register_feature_types() -> dict[str, type]:
    """Register feature types: ``{name: FeatureType subclass}``, each class's ``type_name`` equal to
    its name.

    A feature type is what ``data.features.<column>.type`` names: it owns the column's options and
    their defaults, what fitting on the training split learns (partial fits that merge, for streaming
    and DDP), the one numpy ``transform`` from raw values to the model's input arrays that training,
    export and both serving runtimes call, what a null means, how a request's value is checked, and
    the field's entry in a bundle's manifest (:class:`fusionrec.features.FeatureType`). Its module must
    import with numpy alone: a scoring service imports it by the ``implementation`` its bundle records.
    Built in: ``categorical``, ``multi_categorical``, ``numeric``, ``vector``, ``text``, ``image``,
    ``audio``, ``sequence``.
    """


# --------------------------------------------------------------------------------------------
# Feature encoders
# --------------------------------------------------------------------------------------------


@hookspec
def fusionrec_register_encoders() -> dict[str, type]:
    """Register field encoders: ``{name: FieldEncoder subclass}``.

    An encoder turns one preprocessed field of a batch into a ``[B, output_dim]`` tensor. The
    built-in names ``categorical``, ``numeric``, ``multi_categorical`` and ``vector`` are the
    defaults for the feature types of the same names; ``model.encoders.<field>.name`` picks
    another.
    """


# --------------------------------------------------------------------------------------------
# Fusion of encoded fields
# --------------------------------------------------------------------------------------------


@hookspec
def fusionrec_register_fusions() -> dict[str, type]:
    """Register fusion layers: ``{name: Fusion subclass}``.

    A fusion layer merges the per-field ``[B, D_f]`` tensors into one ``[B, D]`` representation.
    """


# --------------------------------------------------------------------------------------------
# Shared trunks
# --------------------------------------------------------------------------------------------


@hookspec
def fusionrec_register_trunks() -> dict[str, type]:
    """Register shared trunks: ``{name: Trunk subclass}``.

    A trunk maps the fused ``[B, D]`` representation to one ``[B, D_t]`` input per task
    (shared-bottom, MMoE, PLE, ...).
    """


# --------------------------------------------------------------------------------------------
# Task heads
# --------------------------------------------------------------------------------------------


@hookspec
def fusionrec_register_heads() -> dict[str, type]:
    """Register task heads: ``{name: TaskHead subclass}``.

    A head owns everything task-specific: label validation and encoding, the output layer,
    the loss, the metrics and the served score.
    """


# --------------------------------------------------------------------------------------------
# Loss balancers
# --------------------------------------------------------------------------------------------


@hookspec
def fusionrec_register_balancers() -> dict[str, type]:
    """Register loss balancers: ``{name: LossBalancer subclass}``.

    A balancer combines the per-task losses into the one loss that is back-propagated,
    ``L = sum_i alpha_i * L_i`` for the built-in ``fixed`` balancer.
    """


# --------------------------------------------------------------------------------------------
# Retrieval models
# --------------------------------------------------------------------------------------------


@hookspec
def fusionrec_register_retrieval_models() -> dict[str, type]:
    """Register retrieval models: ``{name: RetrievalModel subclass}``.

    A retrieval model (``model.retrieval``) encodes the user-side fields and the item-side fields
    apart, into vectors that meet only in an inner product, so that a catalogue's item vectors are
    computed once and a top K is a nearest-neighbour search. It is built as
    ``factory(encoders, registry, **options)``: the fields' encoders (built like the multi-task
    model's) and the registry, to build its own fusions and trunks by name.
    """
