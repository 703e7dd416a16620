"""Imaging inputs: DICOM objects and video frames become display-space `Frame`s; what leaves the device
is de-identified. Everything that reads pixels from a file or a stream goes through here."""
