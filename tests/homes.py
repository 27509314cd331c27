"""Copying a pipeline home for a test that mutates it (the session builds each home once)."""

import shutil
from pathlib import Path

from recs_pipeline.settings import Settings


def _replace_in_proto(message, old: str, new: str) -> None:
    """Replace the prefix ``old`` by ``new`` in every string field of a protobuf message, recursively."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                entries = value.values() if field.message_type.fields_by_name["value"].message_type else []
                for entry in entries:
                    _replace_in_proto(entry, old, new)
            elif field.label == field.LABEL_REPEATED:
                for entry in value:
                    _replace_in_proto(entry, old, new)
            else:
                _replace_in_proto(value, old, new)
        elif field.type == field.TYPE_STRING:
            if field.label == field.LABEL_REPEATED:
                value[:] = [v.replace(old, new, 1) if v.startswith(old) else v for v in value]
            elif value.startswith(old):
                setattr(message, field.name, value.replace(old, new, 1))


def copy_home(source: Settings, home: Path) -> Settings:
    """A copy of the pipeline home ``source`` at ``home``, for a test that mutates it.

    Everything under the home is copied (DuckDB, features, Feast's registry and online store, models,
    training files). Feast's registry stores absolute offline-source paths; they are rewritten to the
    copy's (what a ``feast apply`` in the copy would write, without a subprocess), and the copy must
    mention the original home nowhere.
    """
    from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto

    shutil.copytree(source.home, home)
    settings = Settings.from_env(home)
    registry = settings.feast_dir / "registry.db"
    proto = RegistryProto()
    proto.ParseFromString(registry.read_bytes())
    _replace_in_proto(proto, str(source.home), str(settings.home))
    data = proto.SerializeToString()
    assert str(source.home).encode() not in data, "the copied Feast registry still points at the original home"
    registry.write_bytes(data)
    return settings
