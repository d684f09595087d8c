"""What a segmentation run hands back: measurements, their table, output files, overview image, DICOM SEG."""
