"""One DCE-MRI exam: loading (files, DICOM), the value that carries it, derived kinetic maps, normalisation."""
