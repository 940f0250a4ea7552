"""Isolated execution of untrusted generated code, with verdicts the code under test cannot forge.

from sandbox import Sandbox
sb = Sandbox(timeout=5.0)
sb.run_script(code)                    # script mode: does it execute cleanly?
sb.check_function(problem, completion) # function mode: HumanEval's check() against the candidate
"""

from sandbox.harness import CandidateError, Sandbox, SandboxUnavailable

__all__ = ["CandidateError", "Sandbox", "SandboxUnavailable"]
