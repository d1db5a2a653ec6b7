#!/usr/bin/env cwl-runner
# A SABER-shaped workflow: pull a cutout from the Boss, detect cells, score them.
cwlVersion: v1.2
class: Workflow
inputs:
  host: string
  protocol: string
  token: string
  collection: string
  experiment: string
  channel: string
  xrange: string
  yrange: string
  zrange: string
  annotation: File
  threshold: {type: float, default: 0.5}
outputs:
  report: {type: File, outputSource: score/report}
steps:
  boss_pull:
    run: boss_cutout.cwl
    in:
      host: host
      protocol: protocol
      token: token
      collection: collection
      experiment: experiment
      channel: channel
      xrange: xrange
      yrange: yrange
      zrange: zrange
    out: [cutout]
  cell_detect:
    run: detect.cwl
    in:
      volume: boss_pull/cutout
      threshold: threshold
      min_voxels: {default: 8}
    out: [cells]
  score:
    run: score.cwl
    in:
      cells: cell_detect/cells
      annotation: annotation
    out: [report]
    hints:
      saber:
        score_format: "F1: {score}"
