#!/usr/bin/env cwl-runner
# Pull a cutout from a Boss (BossDB) server and save it as a .npy file (ZYX).
cwlVersion: v1.2
class: CommandLineTool
doc: Cutout of a Boss channel, saved as a NumPy array.
hints:
  DockerRequirement:
    dockerPull: python:3.11-slim
requirements:
  ResourceRequirement:
    ramMin: 512
    coresMin: 1
baseCommand: python3
inputs:
  script:  # the tool's code, beside this file
    type: File
    default: {class: File, location: boss_cutout.py}
    inputBinding: {position: 0}
  host: {type: string, inputBinding: {position: 1, prefix: --host}}
  protocol: {type: string, default: https, inputBinding: {position: 1, prefix: --protocol}}
  token: {type: string, inputBinding: {position: 1, prefix: --token}}
  collection: {type: string, inputBinding: {position: 1, prefix: --collection}}
  experiment: {type: string, inputBinding: {position: 1, prefix: --experiment}}
  channel: {type: string, inputBinding: {position: 1, prefix: --channel}}
  resolution: {type: int, default: 0, inputBinding: {position: 1, prefix: --resolution}}
  xrange: {type: string, inputBinding: {position: 1, prefix: --x}}
  yrange: {type: string, inputBinding: {position: 1, prefix: --y}}
  zrange: {type: string, inputBinding: {position: 1, prefix: --z}}
  output_name: {type: string, default: cutout.npy, inputBinding: {position: 1, prefix: --output}}
outputs:
  cutout:
    type: File
    outputBinding: {glob: $(inputs.output_name)}
