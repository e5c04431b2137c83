"""Mobile bundles: a TFLite variant with embedded TFLite metadata and its labels, an input/output
description and minimal Android (Kotlin, LiteRT) and iOS (Swift, CocoaPods) code, zipped per
target and smoke-run from its own files (:mod:`.bundle`); the metadata itself in :mod:`.metadata`."""
