"""Prompt Switch (Deng et al., ICCV 2023; official code bladewaltz1/PromptSwitch)."""

from methods.promptswitch.method import PromptSwitch, PromptSwitchParams

__all__ = ["PromptSwitch", "PromptSwitchParams"]
