"""Commands around the jobs, not Beam jobs themselves: imcap-demo, imcap-sample-data, imcap-gallery, imcap-quantize."""
