"""Tool use [4.3.5]: the registry and built-in tools, the tool-use loop, and synthetic tool dialogs.

- :mod:`~training.post_data.tools.registry`: tools by name, JSON-schema argument checks, custom tools from callables.
- :mod:`~training.post_data.tools.builtin`: ``code_interpreter`` (the sandbox), ``brave_search``
  (:mod:`~training.post_data.tools.search`), ``wolfram_alpha`` (:mod:`~training.post_data.tools.math_engine`).
- :mod:`~training.post_data.tools.loop`: parse calls, run them, feed ``ipython`` turns back, until the answer.
- :mod:`~training.post_data.tools.synth`: ``hf-llama3 post-data tools``, K trajectories per prompt -> SFT rows and
  DPO pairs.
"""

from training.post_data.tools.builtin import build_registry
from training.post_data.tools.loop import ModelPolicy, ScriptedPolicy, Trajectory, run_tool_loop, run_tool_loops
from training.post_data.tools.registry import Tool, ToolArgumentError, ToolError, ToolRegistry

__all__ = [
    "ModelPolicy",
    "ScriptedPolicy",
    "Tool",
    "ToolArgumentError",
    "ToolError",
    "ToolRegistry",
    "Trajectory",
    "build_registry",
    "run_tool_loop",
    "run_tool_loops",
]
