"""SAM 3D Objects' helpers; the model's front is the module beside this package,
pipelines/sam3d.py (`GenerateRequest`, `Sam3DObjects`, `SPEC`), which stays a file because the
SAM 3D CPU kit (../shared/sam3d-cpu) imports `pipelines/sam3d.py` itself, and a
`pipelines/sam3d/` package would shadow it. (Not named `sam3d_objects`: that is upstream's
own package, imported beside these.) pipelines/sam3d.py's docstring lists what each
module here holds. Nothing is imported here: `masks` serves `/segment` (pipelines/segment/)
without loading the rest.
"""
