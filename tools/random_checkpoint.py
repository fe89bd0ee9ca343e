"""Shared by the random-checkpoint writers in tools/ (make_random_gpt_oss.py,
make_random_qwen3_5_moe.py): writes OUT/model.safetensors from {name: (dtype, shape, numpy
array)}, the header first, then the tensors in name order, one at a time."""
import json
import os


def write_safetensors(out_dir, tensors):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in sorted(tensors):
        dt, shape, data = tensors[name]
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-(8 + len(blob)) % 8)  # the data starts 8-byte aligned
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for name in sorted(tensors):
            f.write(tensors[name][2].tobytes())
