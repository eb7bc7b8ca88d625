"""sonomask's separation backends: adapters from a model to the ``Separator`` protocol.

``sam_audio``: the SAM Audio port (``model.sam_audio``, which knows nothing of sonomask)
behind ``Separator``; it translates the port's errors into ``model.errors``. The weight-free
``classical`` backend is still ``model.classical``.
"""
