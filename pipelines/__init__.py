"""The index build expressed for distributed engines (Apache Beam, Ray Data).

Each engine's steps call the same ``grdr_core`` stage functions as the local build.
"""
