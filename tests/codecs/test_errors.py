"""One error base for every codec (codecs/errors.py)."""

from __future__ import annotations


def test_every_codec_error_is_a_codec_error() -> None:
    import importlib
    import pkgutil

    import twisted_vmtools.codecs as package
    from twisted_vmtools.codecs.errors import CodecError

    errors = []
    for module in pkgutil.iter_modules(package.__path__):
        loaded = importlib.import_module(f"twisted_vmtools.codecs.{module.name}")
        errors += [
            value for name, value in vars(loaded).items()
            if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == loaded.__name__
        ]
    assert len(errors) >= 10
    assert [e.__name__ for e in errors if not issubclass(e, CodecError)] == []
