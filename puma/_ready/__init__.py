"""_ready"""
