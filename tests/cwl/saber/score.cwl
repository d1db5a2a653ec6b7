#!/usr/bin/env cwl-runner
# Score detected cells against annotated centroids: one-to-one matches within a radius.
cwlVersion: v1.1
class: CommandLineTool
baseCommand: python3
inputs:
  script:  # the tool's code, beside this file
    type: File
    default: {class: File, location: score.py}
    inputBinding: {position: 0}
  cells: {type: File, inputBinding: {position: 2}}
  annotation: {type: File, inputBinding: {position: 3}}
  radius: {type: float, default: 4.0, inputBinding: {position: 1, prefix: --radius}}
stdout: score.txt
outputs:
  report: {type: stdout}
