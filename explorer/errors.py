"""Which exceptions carry a message meant for a person (shown without a traceback)."""

from __future__ import annotations


def user_facing_errors() -> tuple[type[BaseException], ...]:
    from explorer.corpus import CorpusError
    from explorer.database import DatabaseError
    from explorer.demo_lm import DemoLMSettingsError
    from explorer.feature_db import NoIndexError, UnknownFeatureError
    from explorer.feature_index import IndexInputError
    from explorer.label_sets import LabelSetError
    from explorer.model_loading import ModelLoadError
    from explorer.runs import RunFolderError
    from explorer.sae_loading import SAELoadError
    from explorer.sae_vis_export import SaeVisExportError
    from explorer.steering import SteeringInputError

    return (
        CorpusError, DatabaseError, ModelLoadError, RunFolderError, SAELoadError, IndexInputError, NoIndexError,
        UnknownFeatureError, SaeVisExportError, SteeringInputError, DemoLMSettingsError, LabelSetError,
    )


def is_user_facing(err: BaseException) -> bool:
    return isinstance(err, user_facing_errors())
