"""ONNX graph surgery: the ecosystem's I/O names and shapes, topological order, initializer names."""

from __future__ import annotations

import copy


def set_io(proto, channels_in: int, channels_out: int, scale: int, static: tuple[int, int] | None) -> None:
    """Name and shape the graph's I/O exactly as the contract says (tools may have renamed dims)."""
    inp, out = proto.graph.input[0], proto.graph.output[0]
    if static:
        h, w = static
        in_dims = [1, channels_in, h, w]
        out_dims = [1, channels_out, h * scale, w * scale]
    else:
        in_dims = ["batch", channels_in, "height", "width"]
        out_dims = ["batch", channels_out, "height_out", "width_out"]
    for vi, dims in ((inp, in_dims), (out, out_dims)):
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            nd = shape.dim.add()
            if isinstance(d, str):
                nd.dim_param = d
            else:
                nd.dim_value = int(d)


def toposort(graph) -> None:
    """Order ``graph.node`` topologically (the fp16 converter appends its input Casts at the end,
    which onnxruntime accepts but the ONNX checker and other runtimes do not)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a dangling input: leave the rest as it was
            ordered.extend(rest)
            break
        pending = rest
    if [id(n) for n in ordered] != [id(n) for n in graph.node]:
        nodes = [copy.deepcopy(n) for n in ordered]
        del graph.node[:]
        graph.node.extend(nodes)


def initializer_names(proto) -> set[str]:
    names = {i.name for i in proto.graph.initializer}
    for node in proto.graph.node:
        names.update(node.input)
    return names


