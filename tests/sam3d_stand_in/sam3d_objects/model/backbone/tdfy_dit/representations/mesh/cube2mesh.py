"""Stand-in for upstream's MeshExtractResult: the fields `to_glb` reads."""


class MeshExtractResult:
    def __init__(self, vertices, faces, vertex_attrs=None, res=64):
        self.vertices = vertices
        self.faces = faces.long()
        self.vertex_attrs = vertex_attrs
        self.res = res
        self.success = vertices.shape[0] != 0 and faces.shape[0] != 0
