"""_buffers"""
