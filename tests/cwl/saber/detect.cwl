#!/usr/bin/env cwl-runner
# Detect bright cells: threshold the normalised image, keep connected components above a size.
cwlVersion: v1.0
class: CommandLineTool
baseCommand: python3
inputs:
  script:  # the tool's code, beside this file
    type: File
    default: {class: File, location: detect.py}
    inputBinding: {position: 0}
  volume: {type: File, inputBinding: {position: 2}}
  threshold: {type: float, default: 0.5, inputBinding: {position: 1, prefix: --threshold}}
  min_voxels: {type: "int?", inputBinding: {position: 1, prefix: --min-voxels}}
outputs:
  cells:
    type: File
    outputBinding: {glob: cells.csv}
