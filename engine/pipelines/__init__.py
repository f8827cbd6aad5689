"""Pipelines: ordered stages over one `PipelineState`.

`base.Pipeline` runs stages; `wan_t2v.WanT2VPipeline` is the native Wan pipeline and
`diffusers_backend.DiffusersPipeline` runs the other families' diffusers pipelines. Import the module
you need: nothing is imported here, so using one does not load the other's dependencies.
"""
