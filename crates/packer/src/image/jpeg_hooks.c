/*
 * Reaches libjpeg's internal colour-converter pointer through libjpeg's own headers
 * (jpegint.h), so the struct layout is the library's, never a guess. Used by jpeg_hooks.rs
 * between jpeg_start_decompress and the first jpeg_read_scanlines.
 */
#include <stddef.h>
#include <stdio.h>
#define JPEG_INTERNALS
#include "jpeglib.h"

typedef void (*llava_color_convert_fn)(j_decompress_ptr cinfo, JSAMPIMAGE input_buf,
                                       JDIMENSION input_row, JSAMPARRAY output_buf,
                                       int num_rows);

/* Install `f` as the colour converter (upsampled planes -> output rows); returns the old one. */
llava_color_convert_fn llava_jpeg_swap_color_convert(j_decompress_ptr cinfo,
                                                     llava_color_convert_fn f)
{
  llava_color_convert_fn old = cinfo->cconvert->color_convert;
  cinfo->cconvert->color_convert = f;
  return old;
}
